"""Simulated WidowX 250 6DOF (issue 3, in progress): the arm model (``arm``) and Bridge-convention Cartesian
control (``control``). Tasks, the gymnasium env, scripted experts and datasets come next."""
