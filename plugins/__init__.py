"""Destination plugins shipped with the router, registered through entry points like any other."""
