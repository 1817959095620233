"""Revision scripts of the "policy" branch."""
