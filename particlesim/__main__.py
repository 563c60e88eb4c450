"""``python -m particlesim``: the same command line as the ``particlesim`` script."""

from particlesim.cli.app import main

if __name__ == "__main__":
    main()
