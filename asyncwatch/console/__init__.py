"""The live console: aiomonitor with asyncwatch's commands, on loopback by default."""
