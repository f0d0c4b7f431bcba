"""The application on top of the core library: the study's recipes, steps, flows, reports,
benchmarks and the command line. Nothing in the core library imports from here."""
