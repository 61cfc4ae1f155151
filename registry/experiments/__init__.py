"""A/B tests of adapter versions: the record and arm assignment (`model`), the store in the
registry's database (`store`), the statistics that judge them (`stats`) and their plot
(`plot`). The `switchboard experiment` commands are in `switchboard_lora.cli.experiment`."""
