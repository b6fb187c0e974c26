"""Server-rendered Plotly dashboards, served by the API app (plotly.js served locally)."""
