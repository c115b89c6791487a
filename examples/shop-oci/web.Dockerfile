# nginx with the shop's own nginx.conf and page, prefix /srv/shop (its run/ for the pid and
# temp files comes along, empty).
FROM localhost/debian:12
WORKDIR /srv/shop
COPY nginx.conf ./
COPY html/ html/
COPY run/ run/
CMD ["nginx", "-p", "/srv/shop/", "-c", "nginx.conf", "-e", "stderr", "-g", "daemon off;"]
