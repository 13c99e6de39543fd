"""Sub-commands of the ``kpfmasters`` command line (see :mod:`kpfmasters.cli`)."""
