"""Hydra plugin: add the config packages of installed tunesmith plugins to the search path."""
