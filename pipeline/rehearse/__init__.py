"""`bentoship rehearse`: a rendered handoff's canary, run and judged on this machine."""
