"""Simulated WidowX 250 6DOF (issue 3): the arm model now; Bridge-convention control and tasks next."""
