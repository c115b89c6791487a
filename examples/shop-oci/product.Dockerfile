# A product replica: the shop's own product.py (Flask, python3-redis are in the base image).
FROM localhost/debian:12
ENV PYTHONUNBUFFERED=1
WORKDIR /srv/shop
COPY product.py ./
CMD ["python3", "product.py"]
