"""Reports read from the Parquet tables only: a study's text report and plots (study.py), the CLIP
study's comparison of encoder pairs (clip.py), and one HTML page for a results directory (html.py).
"""
