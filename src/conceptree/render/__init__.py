"""What the user sees: the HTML report and its pictures, the concept-graph SVG, the notebook views."""
