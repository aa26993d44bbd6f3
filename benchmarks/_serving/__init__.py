"""Helpers of `benchmarks/serving` (not a library; imported from the script's folder).

- `servers`: start, probe and stop the four servers under test, and each one's JSON shape;
- `load`: the closed-loop keep-alive load generator (bare asyncio) and its do-nothing server;
- `floor.py`: the floor, Starlette + orjson + the native booster on uvicorn (run as a script);
- `naive.py`: the naive BentoML service (copied into a temporary folder and served from there).
"""
