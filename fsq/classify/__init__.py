"""fsq.classify"""
