"""The twin: spec, data, JEPA world model, training and planning. No web or database imports."""
