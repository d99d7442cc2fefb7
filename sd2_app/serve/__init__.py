"""Scale-out on Ray Serve: GPU replicas that each hold a ModelManager, behind the same `Service` front end.

Ray is an optional dependency (requirements-serve.txt). Only `deployment` and `backend` import it, and only the
`--serve` path of app.py and `python -m sd2_app.serve` import those; `config` is plain Python. Neither imports
torch: the front end's `backend` only forwards requests, and `deployment` names the replica's class, whose models
(`replica`: the ModelManager and Service) are imported in the replica's own process.
"""
