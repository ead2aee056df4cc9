# shellcheck shell=sh
# The dispatcher: runs the command its first argument names.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

# Run-wide variables, set here once from the command line and read by the
# functions, which never assign them:
#   rundir runid   the run's directory (RUNDIR) and its id ('' without one)
#   toplevel       the command's system (TOPLEVEL; '' without one)
#   activate_secs window_secs hard_secs rollback_secs grace_secs magic
#   then_boot      the settings of `activate`
# Every other variable belongs to one function, or to the functions of one
# prefix (watch_*, boot_*, log_* of show_log across its calls), or is the
# answer of the function that sets it: $now (uptime_now), $waited (pause,
# nap), $stc_env (stc_env), $stamp (record, for the state change after
# it), $previous (activation_start, for the rollback), $await_cause and
# $await_reason (await_confirmation), $boot_moved (boot_profile); and
# $sysrc, set by a caller of `system` for the exit status it writes there.
rundir='' runid='' toplevel=''
cmd=$1
shift
case "$cmd" in
    activate | boot | watch | launch | probe | confirm | abort | keys-*) rundir=$1 ;;
    hold) rundir=$3 ;;
    health | look) rundir=${2:-} ;;
    displace) runid=$1 ;;
esac
case "$cmd" in
    activate | boot) toplevel=$2 ;;
    check | facts | diff) toplevel=$1 ;;
esac
if [ -n "$rundir" ]; then runid=${rundir##*/}; fi
case "$cmd" in
    activate)
        activate_secs=$3 window_secs=$4 hard_secs=$5 rollback_secs=$6 grace_secs=$7 magic=$8 then_boot=$9
        shift 9
        activate "$@"
        ;;
    boot) shift 2 && begin && boot "$@" ;;
    check) shift && check "$@" ;;
    watch) shift && watch "$@" ;;
    launch) shift && launch "$@" ;;
    probe) probe ;;
    confirm) confirm "${2:-}" "${3:-}" ;;
    abort) abort ;;
    hold) hold "$1" "$2" "${4:-}" ;;
    displace) shift && displace "$@" ;;
    health) health "$1" ;;
    look) look "$1" ;;
    facts) facts "${2:-}" ;;
    status) status ;;
    diff) diff ;;
    keys-stage) keys_stage "${2:-}" ;;
    keys-upload) keys_upload ;;
    keys-discard) rm -rf "$rundir/staged-keys" ;;
    keys-drop) keys_drop force ;;
    keys-adopt) keys_adopt "$2" ;;
    *) echo "deploy-flake agent: unknown command $cmd" >&2; exit 2 ;;
esac
exit 0
