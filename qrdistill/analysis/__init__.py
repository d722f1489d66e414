"""Analysis of saved run logs: tables, the paper's figures and the report."""
