"""fsq.quarantine"""
