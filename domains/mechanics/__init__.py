"""Mechanics adapter (MeLM-style): periodic beam lattices solved by a frame oracle, tasks written as text."""
