"""Segments: audiences defined by rules over customer profiles, evaluated in one SQL query."""
