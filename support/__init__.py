"""What the tests and the benchmarks share (never installed, never imported by the package):
real server processes on free ports, and the checkout's paths."""
