import sys

from mmdistill.cli import exit_without_teardown, main

if __name__ == "__main__":
    rc = main()
    exit_without_teardown(sys.argv[1] if len(sys.argv) > 1 else "", rc)
    raise SystemExit(rc)
