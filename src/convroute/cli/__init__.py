"""The `convroute` command line: one module per subcommand, gathered by cli.main."""
