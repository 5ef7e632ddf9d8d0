"""fsq.cli"""
