"""The ``zray`` command line (installed as the package ``zray_cli``)."""
