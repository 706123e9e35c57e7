"""The `crm` command line and its tools: demo, bench, simulated traffic, embedded servers, privacy tools."""
