"""fsq.reports"""
