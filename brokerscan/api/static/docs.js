// The docs page: Swagger UI over this server's OpenAPI document (served by brokerscan).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false,
});
