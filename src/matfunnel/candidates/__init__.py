"""matfunnel.candidates"""
