import sys

try:
    from quantbuild.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python loads the command
    sys.stderr.write("interrupted\n")
    sys.exit(130)

sys.exit(main())
