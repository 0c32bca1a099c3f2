"""Routing policies, all behind `RoutingPolicy` (policies/base.py)."""
