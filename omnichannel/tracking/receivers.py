"""Receivers for providers' reports (anymail's ``tracking`` signal). (Being written: #3.)"""
