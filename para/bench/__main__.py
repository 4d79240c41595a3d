"""`python -m para.bench`: the side-by-side cost comparison of `para.bench.compare`."""

from para.bench.compare import main

raise SystemExit(main())
