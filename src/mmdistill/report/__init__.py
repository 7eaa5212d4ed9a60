"""Reports: Table 1 (CSV and Markdown), statistics and figures."""
