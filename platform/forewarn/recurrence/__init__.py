"""Recurrent generation: evolutionary search for inputs that make a model loop, and a detector that stops loops.

``detect`` (cycle detector + the original length rule), ``search`` (GA and random search), ``pool`` (the target
as a Ray actor pool), ``sweep`` (Ray Tune), ``features`` / ``detector`` (the learned loop detector).
"""
