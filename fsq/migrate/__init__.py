"""Bringing history from other tools into fsq (fedi-safety first)."""
