"""The HubSpot destination plugin."""
