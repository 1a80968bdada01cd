"""Running and shipping it: bootstrap, the process stack, packaging, releases."""
