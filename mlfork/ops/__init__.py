"""Operations: plain functions that return data; they never print, prompt or chdir."""
