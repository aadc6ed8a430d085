"""cdnlab: the whole CDN on one machine, on loopback, for the demo, the tests and the benchmarks.

The name: a CDN laboratory. It sits above both programs (it may import georouter, edge and
cdn; none of them imports it, except the lazy `georouter demo` entry point) and is installed
with them; its own run-time dependencies are the `demo` extra (`pip install 'georouter[demo]'`).

cdnlab.cli         `cdnlab` / `python -m cdnlab` (also `georouter demo`): run the demo CDN
cdnlab.runner      start origin, edges and router, print the guide and the live table
cdnlab.plan        what the demo runs and prints, derived from the router config alone
cdnlab.supervisor  the one process supervisor: start, wait for listening, layered stop by PID
cdnlab.loopback    the whole CDN on a fresh 127.A.B.0/24 with ephemeral ports (the tests)
cdnlab.origin      the demo origin (a small social app) serving the packaged cdnlab/content/
cdnlab.status      the live status table, from the router's API and metrics
cdnlab.workload    the bounded synthetic workload (`--load`; needs dnspython, the extra)
cdnlab.simulation  the seeded herding simulation of the selector (tests and benchmarks)
cdnlab.cache_sim   hit ratios of the eviction policies on Zipf traces (tests and benchmarks)
"""

__all__: list[str] = []
