"""Ground floor: errors, configuration, names and logging. Imports nothing else of kpfmasters."""
