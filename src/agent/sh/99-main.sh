# shellcheck shell=sh
# The dispatcher: runs the command its first argument names.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

cmd=$1
shift
case "$cmd" in
    activate) activate "$@" ;;
    boot) begin "$1" && boot "$@" ;;
    check) check "$@" ;;
    watch) watch "$@" ;;
    launch) launch "$@" ;;
    probe) probe "$@" ;;
    confirm) confirm "$@" ;;
    abort) abort "$@" ;;
    hold) hold "$@" ;;
    displace) displace "$@" ;;
    health) health "$@" ;;
    look) look "$@" ;;
    facts) facts "$@" ;;
    status) status "$@" ;;
    diff) diff "$@" ;;
    keys-stage) keys_stage "$@" ;;
    keys-upload) keys_upload "$@" ;;
    keys-discard) rm -rf "$1/staged-keys" ;;
    keys-drop) rundir=$1 && keys_drop force ;;
    keys-adopt) keys_adopt "$@" ;;
    *) echo "deploy-flake agent: unknown command $cmd" >&2; exit 2 ;;
esac
exit 0
