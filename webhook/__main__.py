"""`python -m webhook ...`: the operator's command line (see webhook/cli)."""

from webhook.cli import main

if __name__ == "__main__":
    main()
