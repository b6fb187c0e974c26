"""Plant connectivity: OPC UA and MQTT (plain JSON or Sparkplug B) connectors that step a
control loop through the same service as `POST /api/loops/{id}/step` (api.edge.stepping).
"""
