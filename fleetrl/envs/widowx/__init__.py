"""Simulated WidowX 250 6DOF tabletop suite: the arm (``arm``), Bridge-convention control (``control``), the
scene (``scene``), the simulation wrapper (``sim``), tasks (``tasks``), the gymnasium env (``env``) and scripted
experts (``experts``)."""
