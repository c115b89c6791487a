# The API gateway: the shop's own gateway.py.
FROM localhost/debian:12
ENV PYTHONUNBUFFERED=1
WORKDIR /srv/shop
COPY gateway.py ./
CMD ["python3", "gateway.py"]
