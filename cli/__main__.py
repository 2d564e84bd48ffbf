"""python -m zray_cli: the same as the ``zray`` command."""

from zray_cli.main import app

if __name__ == "__main__":
    app(prog_name="zray")
