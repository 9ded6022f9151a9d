"""Runs a command in a session of its own, optionally at an autogroup nice level.

    python3 bench/prio.py NICE COMMAND [ARGS...]     (NICE may be "" for none)

With the kernel's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled = 1) CPU
time is shared between sessions first, so a plain `nice` does nothing against other
people's builds. bench/compare.sh starts every server and load generator through this, so
each is one scheduling group, like any other build on the machine, and Redis and snowlease
get the same treatment. The command replaces this process (exec): its pid is ours.
"""
import os
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    nice, argv = sys.argv[1], sys.argv[2:]
    if os.getpgrp() == os.getpid():
        # A process-group leader cannot setsid(): join the parent's group first (same session).
        os.setpgid(0, os.getpgid(os.getppid()))
    os.setsid()
    if nice:
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(nice)
        except OSError as e:
            print(f"prio: cannot set autogroup nice {nice}: {e}", file=sys.stderr)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
