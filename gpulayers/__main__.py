"""``python -m gpulayers`` prints the environment report (same as ``python -m gpulayers.info``)."""

from .info import main

if __name__ == "__main__":
    raise SystemExit(main())
