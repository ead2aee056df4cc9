# deploy-flake on-target agent: POSIX sh (run by /bin/sh: dash, or bash
# as sh), with GNU coreutils, util-linux (flock, setsid) and systemd.
# shellcheck shell=sh
#
# Installed by the deployer as /run/deploy-flake/agent-<hash>.sh (<hash>: the
# first 16 hex digits of this text's SHA-256) and run as root, with the
# commands below.
# `activate` and `boot` run inside a transient systemd unit, so they
# outlive the ssh connection that started them and finish on their own.
#
# Per-run state lives in a root-only directory RUNDIR:
#   status     one line: "<state> [<cause> <reason>]"; written atomically;
#              <cause> is a machine-readable word (activation-failed,
#              timeout, not-confirmed, health-check, boot-entry, ...)
#   previous   the system that was running before the activation
#   failed-before  the units that had failed before the activation
#   log        everything switch-to-configuration printed
#   confirmed  created by the deployer over a fresh ssh login
#   abort      created by the deployer to stop the activation or refuse
#              the confirmation: one line "<cause> <reason>"
#   alive      the time (/proc/uptime) of the deployer's last heartbeat,
#              written by its lock holder
#   pid        the agent of the run's action (activate or boot)
#   toplevel   GC root of the run's system until the system profile holds it
#   origin     who runs the deploy, from which flake ("<key> <value>" lines)
#   output.<pid>   a FIFO: what an activation prints, on its way to the log
#   exit-status    the exit status of the last command run for the system
#   staged-keys  the keys the deployer sent (N: content, N.meta: upload time,
#              directory, name, user, group, mode), until written
#   keys-written  what this run wrote: "had FILE" (its previous content is
#              kept as DIR/.deploy-flake-previous/RUNID/NAME) or "new FILE"
#   keys-keep  the deployer drops the previous keys itself (after a soak)
#   keys-adopted  the run (a revert) that put back the keys of this RUNDIR
# A run only ever looks at its own RUNDIR, so nothing left by an earlier
# run can confirm a later one. What outlives a reboot is kept root-only in
# /var/lib/deploy-flake: which systems were confirmed on this host
# (confirmed/<name>), whose boot entry was written (booted/<name>), and the
# last deploy (last).
#
#   agent-<hash>.sh activate RUNDIR TOPLEVEL ACTIVATE_SECS WINDOW_SECS HARD_SECS ROLLBACK_SECS GRACE_SECS MAGIC_ROLLBACK(1|0) THEN_BOOT(1|0) [ENV...]
#                                        (WINDOW_SECS: wait that long for the confirmation
#                                        after the deployer's last sign of life, HARD_SECS
#                                        after the activation at most; ROLLBACK_SECS: the
#                                        bound of a rollback; GRACE_SECS: between a bound's
#                                        TERM and its KILL; THEN_BOOT: once confirmed, go
#                                        on as `boot`)
#   agent-<hash>.sh boot RUNDIR TOPLEVEL [ENV...]
#   agent-<hash>.sh check TOPLEVEL SECS SELFCHECK|"" [ENV...]   (SELFCHECK, then
#                                        switch-to-configuration check)
#   agent-<hash>.sh watch RUNDIR SKIP_LINES STATES [HEALTH_SECS]   (keeps waiting while
#                                        in one of STATES, the deployer's comma-separated
#                                        words; with HEALTH_SECS, a watch that ends in
#                                        awaiting-confirmation answers `health` too, its
#                                        lines as "deploy-flake-health RUNID <line>")
#   agent-<hash>.sh launch RUNDIR SKIP_LINES STATES HEALTH_SECS CMD...  (CMD starts an action
#                                        (its systemd-run); once it did, says
#                                        "deploy-flake-delivered" and watches as `watch`
#                                        does, "" for no HEALTH_SECS)
#   agent-<hash>.sh probe RUNDIR         (did an action of the run start?)
#   agent-<hash>.sh confirm RUNDIR [SKIP_LINES STATES]  (run over a fresh login: confirms
#                                        the activation; with SKIP_LINES, says
#                                        "deploy-flake-delivered", then watches as `watch
#                                        RUNDIR SKIP_LINES STATES` does)
#   agent-<hash>.sh abort RUNDIR         (stdin: "<cause> <reason>"; stop the activation
#                                         or refuse the confirmation)
#   agent-<hash>.sh hold INFO BEAT_SECS RUNDIR [HEALTH_SECS]  (run under flock: holds the
#                                         host lock while a line arrives on stdin at least
#                                         every BEAT_SECS, each written to RUNDIR/alive; says
#                                         "deploy-flake-locked" once it holds it, after
#                                         the switches going on, the host's Nix
#                                         ("deploy-flake-nix <nix --version>") and
#                                         what `health HEALTH_SECS` says when asked)
#   agent-<hash>.sh displace RUNID CMD...  (ends a holder of the host lock of the same
#                                         run, whose deployer lost its connection to it,
#                                         then execs CMD: the run takes its lock back)
#   agent-<hash>.sh health SECS [RUNDIR] (system state, failed units, those failed before)
#   agent-<hash>.sh look SECS [RUNDIR]   (health, and what the host runs; read-only)
#   agent-<hash>.sh facts TOPLEVEL [SELFCHECK]   (what the deployer needs to decide)
#   agent-<hash>.sh keys-stage RUNDIR [keep]  (stdin: the keys; staged for `activate`,
#                                        which writes pre-activation keys before the switch
#                                        and post-activation keys once confirmed; with keep,
#                                        the previous keys stay until keys-drop)
#   agent-<hash>.sh keys-upload RUNDIR   (stdin: the keys; written now, all of them)
#   agent-<hash>.sh keys-discard RUNDIR  (the staged keys are not needed: removed)
#   agent-<hash>.sh keys-drop RUNDIR     (the previous keys of a run are not needed)
#   agent-<hash>.sh keys-adopt RUNDIR FROM  (a revert: stage the keys as they were
#                                        before run FROM, to be written by `activate`)
#   agent-<hash>.sh status               (what the host runs, boots, lacks; read-only)
#   agent-<hash>.sh diff TOPLEVEL        (what activating TOPLEVEL would change; read-only)
#
# ENV: NIXOS_NO_CHECK=1 and NIXOS_INSTALL_BOOTLOADER=1, passed on to
# switch-to-configuration (a transient unit does not inherit them).
#
# Answers meant for the deployer are lines "deploy-flake-<what> <value>"; the
# final status of `watch` is printed as "deploy-flake-status RUNID STATE REASON".
#
# Every deadline is measured on the monotonic clock (/proc/uptime: seconds
# since boot, suspend included), never with `date` or file times, which an
# administrator, chrony or a resumed VM may step.

set -u
# PATH and the paths below are set here, once each, and never read from the
# environment: whatever environment reaches the agent cannot move them.
# (The agent tier, tests/agent_tier.rs, runs a copy of this text with just
# these lines pointing into a temporary directory.)
PATH=/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:/run/wrappers/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 077
cd /

STATE=/run/deploy-flake
RECORDS=/var/lib/deploy-flake
PROFILE=/nix/var/nix/profiles/system
CURRENT=/run/current-system
SLICE=/sys/fs/cgroup/system.slice
# /run is memory: the directories of the newest RUNS_KEPT runs are kept
# (older ones go when a run takes the host lock, and so does the log of
# one that succeeded), and an activation's output is kept up to LOG_CAP
# bytes of its log, each line cut at LINE_MAX bytes (the deployer's own
# cap on a line, process::LINE_MAX).
RUNS_KEPT=5
LOG_CAP=1048576
LINE_MAX=65536
